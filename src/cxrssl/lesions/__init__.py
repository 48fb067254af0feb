"""Nodules and lesions: points, masks grown from points, simulated nodules, priors,
detections and FROC."""
