"""image-proxy-webhook: route private images through a vendor pull-through proxy."""
