using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Distributed;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// How <c>onnx-lora train</c> ends under <c>mpirun</c> when something fails: during set-up every rank ends with the same
/// message and exit code (<see cref="DistributedRun.FailTogether"/>); once training runs, a rank that fails alone ends
/// the whole job with MPI_Abort, because the others wait in a step's all-reduce that it will never join.
/// </summary>
internal static class DistributedTraining
{
    /// <summary>An observer for ranks other than 0: only rank 0 reports progress.</summary>
    public static ITrainingObserver Quiet { get; } = new QuietObserver();

    /// <summary>Runs <paramref name="train"/> on this rank of <paramref name="run"/>.</summary>
    public static TrainingSummary Run(DistributedRun run, TextWriter error, Func<TrainingSummary> train)
    {
        if (!run.IsDistributed)
        {
            return train();
        }

        try
        {
            return train();
        }
        catch (Exception e) when (e is not RankFailedException and not TrainingGuardException and not OperationCanceledException)
        {
            // A guard trips on every rank at the same step (it reads reduced values), so it ends like one process.
            int code = e is ToolchainException or IOException or UnauthorizedAccessException or OutOfMemoryException ? LoraCommandExitCode(e) : ExitCodes.InternalError;
            if (!run.SetupComplete)
            {
                throw run.FailTogether(e, code);
            }

            error.WriteLine($"onnx-lora train: error: rank {run.Rank} of {run.Ranks}: {e.Message.ReplaceLineEndings(" ")} (ending all ranks)");
            error.Flush();
            run.Abort(code);
            throw; // Not reached: MPI_Abort ends the process.
        }
    }

    private static int LoraCommandExitCode(Exception e) => LoraCommand.ExitCodeFor(e);

    private sealed class QuietObserver : ITrainingObserver
    {
        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnStep(StepReport report) { }

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }
}
