"""How work reaches a backend for one cell; scenarios know nothing of models.

One scenario per file, registered by name under the ``harness.scenarios`` entry points:

* ``offline.py``: the batch path (prefill + decode of one batch, repeated);
* ``single_stream.py``, ``concurrency.py``, ``server.py``: request scenarios, on the
  shared ``request_scenario.py`` (keys, the system under test, one run to its outcome).

What the request scenarios are built from: ``lengths.py`` (prompt and output lengths),
``loadgen.py`` (which requests, when, how many in flight; the steady window),
``request_metrics.py`` (latency and throughput figures), ``engine.py`` (the in-process
batching engine over a model backend). ``base.py`` is the contract.
"""
