"""AIR itself: guide, generative model, ELBO terms and the gradient estimators for z_pres."""
