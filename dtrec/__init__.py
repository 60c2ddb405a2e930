"""dtrec: multi-modal, ID-free sequential recommendation with two towers."""

__version__ = "0.1.0"
