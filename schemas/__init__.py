"""Record types shared by curation and training (see FORMAT.md)."""
