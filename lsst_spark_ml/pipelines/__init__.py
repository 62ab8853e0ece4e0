"""What the commands and jobs run: each function reads, computes and writes one capability end to end."""
