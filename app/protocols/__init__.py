"""Foreign protocols over the same model manager: TF Serving REST and KServe V2."""
