"""HTTP clients every Corral process shares: the pooled aiohttp session of the hot path
(``pool``) and the httpx client of the control plane (``client``)."""
