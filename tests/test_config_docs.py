from scripts.gen_config_docs import OUT, render


def test_configuration_reference_is_generated_from_the_typed_config():
    assert OUT.read_text() == render(), "run: python scripts/gen_config_docs.py"
