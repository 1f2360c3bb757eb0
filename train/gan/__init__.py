"""The adversarial maths: objectives (losses per phase), gradient penalties, DiffAugment and the
FastGAN decoders' reconstruction loss. Nothing here knows the loop, the data or the outputs."""
