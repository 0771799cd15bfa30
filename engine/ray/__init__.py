"""The Ray Serve backend (issue 8): the same engine on a cluster's GPUs; imported only when configured."""
