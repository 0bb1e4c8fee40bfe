"""Model labelers: one module per label kind. Each loads its model once (``__init__``) and labels a batch
of 16 kHz mono segments; the Ray adapters are in ``pipelines/stages/labelers.py``."""
