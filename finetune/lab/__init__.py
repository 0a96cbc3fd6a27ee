"""The seed's lab: experiments about ResNets themselves rather than a user's model (`finetune ablate`)."""
