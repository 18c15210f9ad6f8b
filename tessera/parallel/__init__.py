"""Model-level parallelism: how a model is split over ranks (tensor parallelism today; expert parallelism
and disaggregated attention / expert roles next). It sits above the layers and the kernels; the
distributed core below (`tessera.distributed`: process groups, the symmetric heap, the device-side language)
knows nothing of models."""
