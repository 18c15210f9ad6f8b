"""`tessera serve`: the OpenAI-compatible HTTP server over the step engine (see docs/serving.md).

`tessera.serve.app.build_app(llm, name)` builds the FastAPI app; `tessera.serve.runner.ServerThread`
runs it on a free local port (tests, benchmarks). This package imports nothing heavy itself, so the
command line stays fast to start.
"""
