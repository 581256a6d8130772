"""One label at a time (`encode_label`, what `predict` uses on labelled rows) gives the index
`encode_labels` gives the whole split, and an unknown label names its row."""

import pytest

from mmdistill.data.labels import TaskInfo, encode_label
from mmdistill.errors import UserError

LOCATION = TaskInfo("location", "multiclass", ("Abdomen", "Head", "Thorax"))
URGENT = TaskInfo("urgent", "binary", ("0", "1"))


def test_labels_are_encoded_as_the_split_encoder_reads_them():
    assert encode_label(LOCATION, " Thorax ", "row 3") == 2
    assert encode_label(URGENT, "yes", "row 3") == 1
    assert encode_label(URGENT, 0.0, "row 3") == 0


def test_an_unknown_label_names_its_row_and_the_known_classes():
    with pytest.raises(UserError, match=r"row 7: task 'location': label 'Pelvis' .*Abdomen, Head, Thorax"):
        encode_label(LOCATION, "Pelvis", "row 7")
    with pytest.raises(UserError, match="row 8: task 'urgent'"):
        encode_label(URGENT, "maybe", "row 8")
