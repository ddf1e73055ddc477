"""Public entry of the compression layer (``acosp.compression``): what a user calls to shrink a pruned network.

``compress`` turns a hard-masked network into a dense one with fewer channels and the same
function; ``compression_spec`` / ``apply_compression_spec`` save and rebuild it; ``model_statistics``
counts parameters and MACs; ``coupled_groups`` finds the convs that can share one mask and
``balanced_groups`` those whose masks should keep channels evenly over a grouped conv's groups;
``gathered_masks`` those whose masks are channels of another group's mask; ``output_convs`` those
that compute the network's output channels; ``maskable_linears`` the linear layers whose output
features can leave (the hidden features of MLPs).
"""

from acosp.compression.channels import UnsupportedOperation
from acosp.compression.compressor import compress, full_float32_precision, relative_error
from acosp.compression.coupling import (
    balanced_groups,
    coupled_groups,
    gathered_masks,
    mask_constraints,
    maskable_linears,
    output_convs,
)
from acosp.compression.spec import apply_compression_spec, compression_report, compression_spec
from acosp.compression.statistics import format_comparison, format_model_statistics, model_statistics
from acosp.inject import shared_mask_groups

__all__ = [
    "UnsupportedOperation",
    "apply_compression_spec",
    "balanced_groups",
    "compress",
    "compression_report",
    "compression_spec",
    "coupled_groups",
    "format_comparison",
    "format_model_statistics",
    "full_float32_precision",
    "gathered_masks",
    "mask_constraints",
    "maskable_linears",
    "model_statistics",
    "output_convs",
    "relative_error",
    "shared_mask_groups",
]
