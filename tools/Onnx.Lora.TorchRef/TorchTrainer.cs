using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;
using Onnx.Lora.Tools;

namespace Onnx.Lora.TorchRef;

/// <summary>AdamW hyper-parameters with torch.optim.AdamW's meaning (decoupled weight decay: p ← p·(1 − lr·wd) first).</summary>
internal sealed record AdamWSettings(double Lr = 1e-3, double Beta1 = 0.9, double Beta2 = 0.999, double Eps = 1e-8, double WeightDecay = 0.0)
{
    public static AdamWSettings From(ToolArgs a) => new(a.Double("lr", 1e-3), a.Double("beta1", 0.9), a.Double("beta2", 0.999), a.Double("eps", 1e-8), a.Double("weight-decay", 0.0));
}

/// <summary>Loss, gradients and AdamW steps of <see cref="TorchLlama"/>'s LoRA parameters with libtorch autograd.</summary>
internal sealed class TorchTrainer : ITrainingPeer
{
    private readonly TorchLlama _model;
    private readonly optim.Optimizer _optimizer;
    private readonly bool _ownsModel;

    public TorchTrainer(TorchLlama model, AdamWSettings adamw, bool ownsModel = false)
    {
        _model = model;
        _ownsModel = ownsModel;
        _optimizer = optim.AdamW(model.Parameters(), adamw.Lr, adamw.Beta1, adamw.Beta2, adamw.Eps, adamw.WeightDecay);
    }

    public string Name => "libtorch";

    /// <summary>Loss and the gradient of every A and B (by tensor name) on <paramref name="batch"/>; parameters unchanged.</summary>
    public (float Loss, Dictionary<string, float[]> Gradients) LossAndGradients(TokenBatch batch)
    {
        using var scope = NewDisposeScope();
        _optimizer.zero_grad();
        Tensor loss = Loss(batch);
        loss.backward();
        var grads = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (TorchLoraLinear l in _model.Lora)
        {
            grads[l.AName] = l.A.grad!.data<float>().ToArray();
            grads[l.BName] = l.B.grad!.data<float>().ToArray();
        }

        return (loss.item<float>(), grads);
    }

    /// <summary>One AdamW step on <paramref name="batch"/>; returns the loss before the update.</summary>
    public float Step(TokenBatch batch)
    {
        using var scope = NewDisposeScope();
        _optimizer.zero_grad();
        Tensor loss = Loss(batch);
        loss.backward();
        _optimizer.step();
        return loss.item<float>();
    }

    /// <summary>Current value of every A and B, by tensor name.</summary>
    public Dictionary<string, float[]> Parameters() =>
        _model.Lora.SelectMany(l => new[] { (l.AName, l.A), (l.BName, l.B) })
            .ToDictionary(p => p.Item1, p => p.Item2.data<float>().ToArray(), StringComparer.Ordinal);

    public void Dispose()
    {
        _optimizer.Dispose();
        if (_ownsModel)
        {
            _model.Dispose();
        }
    }

    private Tensor Loss(TokenBatch batch)
    {
        long[] shape = [batch.BatchSize, batch.SeqLen];
        Tensor ids = tensor(batch.Ids, shape, ScalarType.Int64);
        Tensor mask = tensor(batch.Mask, shape, ScalarType.Int64);
        Tensor labels = tensor(batch.Labels, shape, ScalarType.Int64);
        return TorchLlama.CausalLmLoss(_model.Forward(ids, mask), labels);
    }
}

/// <summary>Timing of a training run: steps after warm-up only.</summary>
internal sealed record TrainTiming(int Steps, int TokensPerStep, TimeSpan Elapsed)
{
    public double TokensPerSecond => Steps * (double)TokensPerStep / Elapsed.TotalSeconds;

    public static TrainTiming Measure(int warmup, int steps, int tokensPerStep, Action<int> step)
    {
        for (int i = 0; i < warmup; i++)
        {
            step(i);
        }

        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            step(warmup + i);
        }

        return new TrainTiming(steps, tokensPerStep, sw.Elapsed);
    }
}
