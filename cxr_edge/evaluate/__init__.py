"""``cxr-edge eval``'s library: metrics (``metrics``), datasets (``datasets``) and the loop (``loop``)."""
