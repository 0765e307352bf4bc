"""Images: finding them on disk, decoding untrusted bytes, the DINOv2 transforms."""
