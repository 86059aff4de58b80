"""``nbfleet-router``: notebooks' stable URLs in front of the scheduler replicas, serving open
editors while no replica answers (:mod:`router.routes`, :mod:`router.app`)."""
