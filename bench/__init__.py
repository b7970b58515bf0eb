"""The bench: benchmarks of the engine and the worker, the reference loop they race, the chart
and the bounds (`bounds.json`) `make bench` holds them to. Outside the service package: the
service depends on nothing here, and the bench's own dependencies are the `bench` extra.

    cli.py        the command line: `python -m bench`, or `streams bench` in a checkout
    encoder.py    the encoder bench (engine, naive, reference, int8, the runs' rounds)
    stream.py     the runs through a worker subprocess on a fresh embedded broker
    llm.py        the LLM engine's bench (`--engine llm`)
    reference.py  the reference loop: the obvious confluent-kafka + pipelines code
    otlp.py       the OTLP/gRPC receiver of the traced runs
    chart.py, report.py, bounds.py   the figures as a PNG, as tables, and against bounds.json
    gpu.sh, gpu_bench.py             both engines on a GPU machine that has only this tree
    latency.py, sources.py, tracing.py   one-question scripts (`python -m bench.sources ...`)

Importing this package imports nothing (bench/gpu.sh runs where little is installed)."""
