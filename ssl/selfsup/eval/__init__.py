"""Downstream evaluation of frozen or fine-tuned encoders."""
