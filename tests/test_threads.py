"""train/run/threads.py: a rank's intra-op threads, chosen from its cores, its machine's ranks and
its decoding workers; --threads, then a user's OMP_NUM_THREADS, win over the share."""
import torch

from tests.conftest import completed, train_in_process
from train.run.threads import choose_threads, set_threads, user_omp_threads


def test_a_rank_takes_its_share_of_the_cores_less_its_decoding_workers():
    assert choose_threads(16, 1, 0).threads == 16
    assert choose_threads(16, 2, 2).threads == 6  # 8 cores a rank, 2 of them decoding
    assert choose_threads(2, 2, 0).threads == 1
    assert choose_threads(2, 1, 2).threads == 1  # never below one, however many workers
    assert choose_threads(16, 1, 0).source == "share"


def test_threads_flag_wins_over_omp_num_threads_which_wins_over_the_share():
    user = {"OMP_NUM_THREADS": "3"}
    assert choose_threads(16, 2, 2, requested=5, environ=user).threads == 5
    assert (choose_threads(16, 2, 2, environ=user).threads, choose_threads(16, 2, 2, environ=user).source) == (3, "OMP_NUM_THREADS")


def test_torchruns_own_one_thread_is_not_taken_for_the_users():
    assert user_omp_threads({"OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x"}) is None
    assert user_omp_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert user_omp_threads({"OMP_NUM_THREADS": "4", "TORCHELASTIC_RUN_ID": "x"}) == 4
    assert user_omp_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's nested form
    assert user_omp_threads({"OMP_NUM_THREADS": "0"}) is None and user_omp_threads({"OMP_NUM_THREADS": "many"}) is None


def test_set_threads_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        choice = set_threads(None, workers=0, environ={"LOCAL_WORLD_SIZE": "64"})
        assert (choice.threads, choice.local_ranks, torch.get_num_threads()) == (1, 64, 1)
        assert set_threads(2, workers=0, environ={}).threads == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_logs_its_thread_choice_in_one_line(tmp_path):
    result = completed(train_in_process("train/wgangp.py", "--debug", "--max-steps", "1", "--threads", "1",
                                        "--out", str(tmp_path / "run")))
    assert "threads: 1 intra-op thread per process (--threads)\n" in result.stdout
    assert result.stdout.count("threads: ") == 1


def test_threads_below_one_are_refused_naming_the_flag(tmp_path):
    result = train_in_process("train/wgangp.py", "--debug", "--threads", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--threads 0: must be at least 1" in result.stderr
