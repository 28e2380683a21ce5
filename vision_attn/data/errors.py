"""Errors raised for bad user data."""


class DataFormatError(ValueError):
    """A dataset file is malformed; the message names the file and the field."""


class ImageLoadError(OSError):
    """An image file is missing, truncated or not an image; the message names the path."""
