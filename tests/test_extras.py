"""`tempme_composer.extras`: a command missing an extra's package names the extra in one line (docs/installs.md).

Where the packages are absent, `tests/test_inference_install.py` runs the real commands; here, with the
training stack installed, the message and what is not mistaken for a missing extra.
"""

from __future__ import annotations

import pytest

from tempme_composer.extras import (
    EXTRA_OF_MODULE,
    MissingExtraError,
    missing_extra_line,
    reports_missing_extras,
    require_extra,
)


def test_the_line_names_the_distribution_and_the_extra():
    assert missing_extra_line('streaming', 'writing MDS shards') == (
        "writing MDS shards needs mosaicml-streaming, which this install lacks: pip install 'tempme-composer[mds]'"
    )
    assert {extra for _, extra in EXTRA_OF_MODULE.values()} == {'mds', 'train', 'search'}


def test_an_installed_package_passes_the_check():
    require_extra('streaming', 'writing MDS shards')  # the suite's install has the training stack


def test_a_missing_extra_is_one_line_and_status_2(capsys):
    @reports_missing_extras('tempme-demo')
    def main() -> int:
        raise MissingExtraError(missing_extra_line('usearch', '--approximate'))

    assert main() == 2
    assert capsys.readouterr().err.splitlines() == [
        f'tempme-demo: {missing_extra_line("usearch", "--approximate")}'
    ]


def test_a_module_missing_inside_an_installed_package_is_not_called_a_missing_extra():
    @reports_missing_extras('tempme-demo')
    def main() -> int:
        import streaming.no_such_module  # noqa: F401

        return 0

    with pytest.raises(ModuleNotFoundError, match='streaming.no_such_module'):
        main()


def test_an_unrelated_missing_module_is_not_called_a_missing_extra():
    @reports_missing_extras('tempme-demo')
    def main() -> int:
        import no_such_package_anywhere  # noqa: F401

        return 0

    with pytest.raises(ModuleNotFoundError, match='no_such_package_anywhere'):
        main()
