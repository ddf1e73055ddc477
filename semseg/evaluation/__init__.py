"""The evaluation stage: sliding-window inference over a test list and its scores."""
