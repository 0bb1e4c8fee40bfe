"""The Ray adapters of the curate job's stages, one module each (the logic lives in processors/)."""
