"""Development tools: benchmarks (``make bench``, ``make bench-gpu``), the quality measure, the
example request of ``make run`` and the tiny random ChronoEdit model. Serving code never imports
this package (a test checks the import graph), and the images leave it out."""
