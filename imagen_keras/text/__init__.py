"""Text conditioning: T5 widths (and, later, the keras-hub T5 encoder)."""

from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, T5_WIDTHS, get_encoded_dim

__all__ = ["DEFAULT_T5_NAME", "T5_WIDTHS", "get_encoded_dim"]
