using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Metrics;

namespace Onnx.Lora.Trainer.Runner;

// What a run writes besides metrics: checkpoints (rank 0 only), the trained LoRA model, and where --resume points.
public sealed partial class TrainingRunner
{
    private void Save(RunContext c)
    {
        if (!Distributed.IsRoot)
        {
            return; // Every rank holds the same parameters and state; rank 0 writes them.
        }

        LoopState loop = c.Loop;
        var state = new TrainerState
        {
            GlobalStep = loop.Step,
            DataPosition = c.Data.Train.Position,
            RngState = new DeterministicRandom(c.Options.Seed).GetState(),
            ScheduleKind = c.Schedule.Kind.ToString().ToLowerInvariant(),
            PeakLearningRate = c.Schedule.PeakLearningRate,
            WarmupSteps = c.Schedule.WarmupSteps,
            TotalSteps = c.Schedule.TotalSteps,
            LastLearningRate = loop.LastLearningRate,
            OptimizerStep = (int)c.Session.OptimizerSteps,
            TokensSeen = loop.TokensSeen,
            BestEvalLoss = loop.BestEvalLoss,
            EvaluationsWithoutImprovement = loop.EvaluationsWithoutImprovement,
            OptionsFingerprint = Distributed.GlobalView(c.Options).ResumeFingerprint(),
        };
        List<NamedTensor> parameters = CurrentParameters(c.Session);
        long stepsPerEpoch = Math.Max(1, (((c.Data.Train.RowCount + c.Options.BatchSize - 1) / c.Options.BatchSize) + c.Options.GradientAccumulationSteps - 1) / c.Options.GradientAccumulationSteps);
        var run = new HfRunInfo
        {
            Epoch = c.Data.Train.Position.Epoch + ((double)c.Data.Train.Position.Index / c.Data.Train.RowCount),
            NumTrainEpochs = (int)Math.Ceiling(c.Options.MaxSteps is null ? c.Options.Epochs : (double)c.TotalSteps / stepsPerEpoch),
            TrainBatchSize = c.Options.BatchSize,
            SaveSteps = c.Options.SaveSteps,
            EvalSteps = c.Options.EvalSteps,
            LogHistory = MetricsLog.ReadRecords(c.Metrics!.Path, loop.Step), // Save returned above on ranks without metrics.
        };
        var checkpoint = new TrainingCheckpoint(parameters, c.Session.ExportOptimizerMoments(), state, run);
        string folder = CheckpointStore.Save(c.CheckpointsDir, checkpoint, c.Model.Manifest, c.Options.SaveTotalLimit, BaseModelReference.For(c.Options.Model), AfterCheckpointFileWritten, c.Task.PeftTaskType);
        loop.LastSavedStep = loop.Step;
        loop.LastCheckpoint = folder;
        _observer.OnCheckpoint(loop.Step, folder);
    }

    // The LoRA model prepared in memory (its frozen weights mapped from the artifacts) gets the trained tensors; it is
    // written as its source was: external data in one new file, or inline.
    private static void WriteTrainedModel(IReadOnlyList<NamedTensor> trained, PreparedModel prepared, string path)
    {
        using Model? reloaded = prepared.LoraModel is null ? OnnxReader.Load(prepared.LoraModelPath) : null;
        Model model = prepared.LoraModel ?? reloaded!;
        foreach (NamedTensor t in trained)
        {
            model.Graph.Initializers.SetData(t.Name, InMemoryTensor.FromFloats(t.Name, t.Shape, t.Data));
        }

        OnnxWriter.Save(model, path, SaveOptions.Like(path, reloaded?.DataFiles.Count > 0 || prepared.ExternalData));
    }

    private static List<NamedTensor> CurrentParameters(LoraTrainingSession session) =>
        session.Parameters.Select(p => new NamedTensor(p.Name, [.. p.Dims], session.GetParameter(p.Name).ToArray())).ToList();

    private static string? ResolveResume(TrainOptions o, string checkpointsDir)
    {
        if (o.Resume is null)
        {
            return null;
        }

        if (o.Resume.Equals("latest", StringComparison.OrdinalIgnoreCase) || o.Resume.Length == 0)
        {
            return CheckpointStore.FindLatest(checkpointsDir);
        }

        return Directory.Exists(o.Resume) ? Path.GetFullPath(o.Resume)
            : throw new CheckpointException($"--resume: checkpoint folder '{o.Resume}' does not exist.");
    }
}
