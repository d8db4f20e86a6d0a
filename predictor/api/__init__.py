"""The HTTP edge: fal's routes, the queue's routes, KServe's model, keys, errors, the playground.

Requests are validated and errors shaped here, once; below this package nothing knows HTTP.
"""
