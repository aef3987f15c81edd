"""Kubernetes glue that runs beside the data path, never in it: policy ConfigMap sync, the
preStop drain hook, Envoy config rendering shared with the Helm chart."""
