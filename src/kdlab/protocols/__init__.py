"""The metric-learning study, the last one not yet a bench spec.

It selects on retrieval (Recall@1), which needs the engine's evaluators; once they land
it becomes ``src/kdlab/bench/protocols/metric.yaml`` and this package goes away. Every
other study is a protocol of ``kdlab bench``.
"""
