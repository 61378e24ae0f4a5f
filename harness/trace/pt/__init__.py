"""Intel Processor Trace: packets, IP compression, TNT, timing, the per-CPU encoder, the image
and the decoder (Intel SDM vol. 3C, "Intel Processor Trace"; ../shared/reference/intel-pt.md)."""
