"""One router per group of routes: predict (/predict, /classify, /detect), health (/healthz, /readyz, /metrics,
/v1/model), admin (/admin/reload), v2 (the Open Inference Protocol)."""
