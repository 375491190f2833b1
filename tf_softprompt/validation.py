"""Argument checks shared by the layers, the keras-hub adapter and the CLI."""


def check_num_prompt_tokens(num_prompt_tokens):
    """`num_prompt_tokens` if it is a positive int, else a clear error."""
    if (
        isinstance(num_prompt_tokens, bool)
        or not isinstance(num_prompt_tokens, int)
        or num_prompt_tokens <= 0
    ):
        raise ValueError(
            "`num_prompt_tokens` must be a positive integer, the number of "
            f"prompt vectors P. Received: num_prompt_tokens={num_prompt_tokens!r}"
        )
    return num_prompt_tokens


def check_offset(offset):
    """`offset` if it is a non-negative int, else a clear error."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(
            "`offset` must be a non-negative integer: 0 puts the prompt first, "
            f"1 after [CLS]/BOS. Received: offset={offset!r}"
        )
    return offset
