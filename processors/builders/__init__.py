"""Example builders: labelled segments → training examples of the examples layer (FORMAT.md)."""
