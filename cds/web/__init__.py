"""The HTTP edge: routes, client authentication, CORS, request limits, logs and metrics. No clinical logic."""
