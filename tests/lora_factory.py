"""Trains real LoRA adapters on the real student for a few steps (PEFT, CPU), for serving tests.

Each adapter is taught to answer one probe prompt with its own codeword, so a test can tell from the output
alone which version produced a response. A few dozen steps on one example take seconds on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

PROBE = "Which codeword do you carry?"


def train_codeword_adapter(
    model_dir: str, out_dir: Path, codeword: str, *, rank: int = 8, steps: int = 30, seed: int = 0,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    prompt = tok.apply_chat_template([{"role": "user", "content": PROBE}], add_generation_prompt=True,
                                     tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    c_ids = tok(f"{codeword}{tok.eos_token}", add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + c_ids])
    labels = torch.tensor([[-100] * len(p_ids) + c_ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


def make_random_adapter(
    model_dir: str, out_dir: Path, seed: int, target_modules: list[str], rank: int = 8, scale: float = 0.08
) -> Path:
    """A PEFT LoRA on the real model with random non-zero B (PEFT starts B at zero), so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules,
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale)
    model.save_pretrained(out_dir)
    return out_dir
