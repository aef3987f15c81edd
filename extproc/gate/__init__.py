"""The data path: one processor per ext_proc stream, chosen by route; admission, the stream
budget, settlement and the pure builders of Envoy replies. Imports nothing from `control`,
`ctl`, `kube`, `dev` or `serve`."""
