"""Out-of-distribution scoring (DCP, Lee & Shin 2022) and its labelled evaluation set (``labelled_ood``)."""
