"""Benchmarks and reports: `python -m fastconv bench` / `python -m fastconv report`.

    layers   every distinct conv / pool / BN layer of ResNet-50 and GoogLeNet (from the papers)
    cases    the fastconv op and the torch op for one layer and pass, on the same tensors
    timing   warm-up, rounds of launches, medians and IQR (CUDA events or perf_counter)
    env      the environment block and the device's roofs
    runner   per-layer and whole-model runs -> records
    results  the results.json schema; loading ours and pytest-benchmark JSON
    report   text and Markdown tables, comparisons;  plots: PNGs (matplotlib, optional)
    cli      the two subcommands
"""
