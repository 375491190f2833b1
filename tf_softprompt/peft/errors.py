"""The error an adapter that cannot be imported exactly raises."""


class PeftImportError(ValueError):
    """A PEFT adapter that cannot be imported exactly (names what and why)."""


def error(adapter_dir, message):
    return PeftImportError(f"PEFT adapter {adapter_dir}: {message}")


__all__ = ["PeftImportError", "error"]
