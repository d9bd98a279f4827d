// placeholder: the CPU kernels are being written (issue 2)
