"""The research pipeline that ``tool/`` and ``benchmarks/`` run, a stage per folder.

``data`` (datasets, transforms, lists, downloads), ``models`` (the networks), ``training`` (an
epoch, the optimizer, checkpoints, processes, logs), ``evaluation`` (sliding-window inference,
scores) and ``reporting`` (runs, studies, tables, plots); ``config`` holds every key with its
default, shared by all of them. Installed with the ``acosp`` library (``pip install -e .``); the
library never imports it.
"""
