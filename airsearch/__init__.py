"""airsearch: Attend, Infer, Repeat made trainable reliably, measured by convergence rates.

Layout follows the data flow: data -> model -> training -> study -> report.
"""
