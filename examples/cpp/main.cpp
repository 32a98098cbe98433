// Trains a tiny bag-of-words classifier in C++ with mybag::EmbeddingBag, then checks it against
// the functional form. No Python involved.
#include <mybag/mybag.h>
#include <torch/torch.h>

#include <iostream>

struct BagOfWords : torch::nn::Module {
  BagOfWords(int64_t vocabulary, int64_t dim, int64_t classes)
      : bag(register_module(
            "bag", mybag::EmbeddingBag(mybag::EmbeddingBagOptions(vocabulary, dim)
                                           .mode(torch::kMean)
                                           .padding_idx(0)))),
        head(register_module("head", torch::nn::Linear(dim, classes))) {}

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& offsets) {
    return head(bag(tokens, offsets));
  }

  mybag::EmbeddingBag bag;
  torch::nn::Linear head;
};

int main() {
  torch::manual_seed(0);
  BagOfWords model(/*vocabulary=*/100, /*dim=*/16, /*classes=*/2);
  torch::optim::SGD optimizer(model.parameters(), /*lr=*/0.5);

  // Four documents of different lengths, as one flat index list with offsets.
  const auto tokens = torch::tensor({5, 17, 17, 3, 0, 42, 8, 99, 1, 2, 3}, torch::kLong);
  const auto offsets = torch::tensor({0, 3, 5, 8}, torch::kLong);
  const auto labels = torch::tensor({0, 1, 1, 0}, torch::kLong);

  double first_loss = 0, loss_value = 0;
  for (int step = 0; step < 50; ++step) {
    optimizer.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model.forward(tokens, offsets), labels);
    loss.backward();
    optimizer.step();
    loss_value = loss.item<double>();
    if (step == 0) first_loss = loss_value;
  }
  std::cout << model.bag << "\n"
            << "loss: " << first_loss << " -> " << loss_value << "\n";

  // The module and the functional form agree.
  const auto pooled = model.bag(tokens, offsets);
  const auto direct = mybag::embedding_bag(tokens, model.bag->weight, offsets, std::nullopt, 2.0,
                                           false, mybag::Mode::Mean, false, std::nullopt, false,
                                           /*padding_idx=*/0);
  const bool agree = torch::equal(pooled, direct);
  std::cout << "module == functional: " << (agree ? "yes" : "no") << "\n";
  return (agree && loss_value < first_loss) ? 0 : 1;
}
