"""The serving app's own metrics, as Ray Serve custom metrics: on Ray's Prometheus endpoint beside
Serve's built-in ones (names there get Ray's `ray_` prefix; Serve adds the application,
deployment and replica tags).

    persona_ray_requests_total{route, model, status}       every request the ingress answered
    persona_ray_request_latency_ms{route}                   time to the answer's first byte
    persona_ray_personas_total{source}                      given | retrieved | none
    persona_ray_refusals_total{field}                       4xx by the field refused (persona, prompt, ...)
    persona_ray_generated_tokens_total{model}               tokens the models wrote
"""

from __future__ import annotations

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class ServingMetrics:
    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter("persona_ray_requests", description="requests answered, by route, model "
                                        "and HTTP status", tag_keys=("route", "model", "status"))
        self.latency = metrics.Histogram("persona_ray_request_latency_ms", description="milliseconds to the answer "
                                         "(to its first byte when streamed)", boundaries=LATENCY_BOUNDARIES_MS,
                                         tag_keys=("route",))
        self.personas = metrics.Counter("persona_ray_personas", description="answers by where their persona came "
                                        "from", tag_keys=("source",))
        self.refusals = metrics.Counter("persona_ray_refusals", description="4xx answers by the field refused",
                                        tag_keys=("field",))
        self.tokens = metrics.Counter("persona_ray_generated_tokens", description="tokens the models generated",
                                      tag_keys=("model",))

    def answered(self, route: str, model: str, status: int, ms: float, refused_field: str | None) -> None:
        self.requests.inc(1, tags={"route": route, "model": model, "status": str(status)})
        self.latency.observe(ms, tags={"route": route})
        if 400 <= status < 500:
            self.refusals.inc(1, tags={"field": refused_field or "body"})

    def persona(self, source: str) -> None:
        self.personas.inc(1, tags={"source": source})

    def generated(self, model: str, tokens: int) -> None:
        if tokens:
            self.tokens.inc(tokens, tags={"model": model})
