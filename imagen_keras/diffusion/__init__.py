"""Stateless diffusion maths: schedules, Gaussian and elucidated (EDM) diffusion, guidance."""

from imagen_keras.diffusion.elucidated import (
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    heun_churn_gamma,
    karras_sigmas,
)
from imagen_keras.diffusion.gaussian import (
    predict_noise_from_start,
    predict_start_from_noise,
    predict_start_from_v,
    predict_v,
    q_posterior,
    q_sample,
)
from imagen_keras.diffusion.guidance import classifier_free_guidance, project
from imagen_keras.diffusion.loss_weights import min_snr_loss_weight, p2_loss_weight
from imagen_keras.diffusion.samplers import (
    Schedule,
    karras_schedule,
    sample_ancestral,
    sample_ddim,
    sample_heun,
    time_schedule,
)
from imagen_keras.diffusion.schedules import (
    cosine_log_snr,
    default_noise_schedules,
    get_log_snr_fn,
    linear_log_snr,
    log_snr_to_alpha_sigma,
    sampling_time_pairs,
)
from imagen_keras.diffusion.thresholding import dynamic_threshold, static_clip

__all__ = [
    "Schedule",
    "classifier_free_guidance",
    "cosine_log_snr",
    "default_noise_schedules",
    "dynamic_threshold",
    "edm_loss_weight",
    "edm_preconditioning",
    "edm_training_sigmas",
    "get_log_snr_fn",
    "heun_churn_gamma",
    "karras_schedule",
    "karras_sigmas",
    "linear_log_snr",
    "log_snr_to_alpha_sigma",
    "min_snr_loss_weight",
    "p2_loss_weight",
    "predict_noise_from_start",
    "predict_start_from_noise",
    "predict_start_from_v",
    "predict_v",
    "project",
    "q_posterior",
    "q_sample",
    "sample_ancestral",
    "sample_ddim",
    "sample_heun",
    "sampling_time_pairs",
    "static_clip",
    "time_schedule",
]
