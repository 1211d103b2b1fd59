"""Commands around the model: benchmarks, visualisation, ablations, checkpoint conversion, part listings."""
