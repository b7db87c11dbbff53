"""Benchmarks and reports: `python -m fastconv bench` / `python -m fastconv report`.

    layers   every distinct conv / pool / BN layer of a model (ResNet and GoogLeNet from the papers,
             the rest of fastconv.models traced from the built network)
    cases    the fastconv op and the torch op for one layer and pass, on the same tensors
    timing   warm-up, rounds of launches, medians and IQR (CUDA events or perf_counter); noisy times
    env      the environment block, the device's roofs, the load-average warning
    runner   per-layer and whole-model runs -> records
    results  the results.json schema; loading ours and pytest-benchmark JSON
    report   text and Markdown tables (IQR beside every time), warnings, comparisons;
    plots    PNGs (matplotlib, optional), their captions
    cli      the two subcommands
"""
