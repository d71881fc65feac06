"""TensorRT engines: profile sizing, plan manifests (pure Python) and the builder (needs TensorRT)."""
